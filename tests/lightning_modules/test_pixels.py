"""Images as sequences of sub-pixel intensities (lightning_modules/data/pixels.py): raster order, the fixed 260-token
vocabulary, the generated shapes pictures and local image datasets, the sample grid."""

import datasets
import numpy as np
import pytest
from PIL import Image

from lightning_modules.data import PixelDataModule, ShapesPixelDataModule
from lightning_modules.data.pixels import FIRST_INTENSITY_ID, ids_to_image, image_to_ids, write_image_grid


def test_sub_pixels_go_in_raster_order_rows_then_columns_then_channels():
    pixels = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) * 10  # (H, W, C): (0,0)=[0,10,20], (0,1)=[30..]
    ids = image_to_ids(Image.fromarray(pixels), image_size=2, num_channels=3)
    assert (ids - FIRST_INTENSITY_ID).tolist() == list(range(0, 120, 10))
    assert np.array_equal(ids_to_image(ids, 2, 3), pixels)
    grey = image_to_ids(Image.fromarray(pixels), image_size=2, num_channels=1)  # converted, one channel
    assert grey.shape == (4,)


def test_other_sizes_are_resized_and_undecoded_images_are_read():
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (5, 3), (200, 100, 50)).save(buffer, format="PNG")
    ids = image_to_ids({"bytes": buffer.getvalue(), "path": None}, image_size=4, num_channels=3)
    assert ids.shape == (48,) and (ids.reshape(16, 3) - FIRST_INTENSITY_ID == [200, 100, 50]).all()


def test_the_shapes_module_gives_whole_pictures_after_the_start_token(tmp_path):
    datamodule = ShapesPixelDataModule(num_train=24, num_validation=8, num_test=8, image_size=8, batch_size=4,
                                       eval_batch_size=8, cache_dir=str(tmp_path))
    assert datamodule.tokenizer_fields["vocab_size"] == 260
    assert (datamodule.sequence_length, datamodule.grid_width) == (192, 24)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids"].shape == (4, 193) and (batch["input_ids"][:, 0] == datamodule.bos_token_id).all()
    assert batch["input_ids"][:, 1:].min() >= FIRST_INTENSITY_ID and batch["input_ids"].max() < 260
    assert batch["attention_mask"].all() and (batch["labels"] == batch["input_ids"]).all()
    validation = list(datamodule.val_dataloader())
    assert sum(len(b["input_ids"]) for b in validation) == 8
    picture = ids_to_image(validation[0]["input_ids"][0, 1:], 8, 3)
    assert picture.max() >= 200  # a coloured shape on the dark background
    assert datamodule.tokenizer.decode([1, 4, 259]) == "<s> 0 255"


def test_a_local_image_folder_with_its_own_column(tmp_path):
    folder = tmp_path / "grey"
    (folder / "data").mkdir(parents=True)
    rows = {"picture": [Image.fromarray(np.full((6, 6), value, dtype=np.uint8)) for value in (0, 128, 255)],
            "label": [0, 1, 2]}
    table = datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"picture": datasets.Image(), "label": datasets.Value("int64")}))
    table.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    datamodule = PixelDataModule(str(folder), image_column="picture", train_split="train[:2]",
                                 validation_split="train[2:]", test_split="train[2:]", image_size=4, num_channels=1,
                                 batch_size=2, cache_dir=str(tmp_path / "cache"))
    datamodule.setup("fit")
    examples, lengths = datamodule.examples("validation")
    assert lengths.tolist() == [17] and (examples[0]["input_ids"][1:] == FIRST_INTENSITY_ID + 255).all()
    wrong = PixelDataModule(str(folder), image_column="label", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="not images: set image_column"):
        wrong.setup("fit")
    with pytest.raises(ValueError, match="num_channels must be one of"):
        PixelDataModule(str(folder), num_channels=4, cache_dir=str(tmp_path / "cache"))


def test_the_sample_grid_puts_pictures_side_by_side(tmp_path):
    pictures = [np.full((4, 4, 3), value, dtype=np.uint8) for value in (0, 100, 200)]
    path = write_image_grid(pictures, tmp_path / "grid.png", columns=2, scale=2, gap=1)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * (8 + 1) + 1, 2 * (8 + 1) + 1, 3)
    assert (grid[1:9, 1:9] == 0).all() and (grid[1:9, 10:18] == 100).all() and (grid[10:18, 1:9] == 200).all()
    assert (grid[10:18, 10:18] == 255).all()  # no fourth picture: background


def test_a_checkpoint_s_run_record_rebuilds_the_module_with_the_tokenizer_it_brings(tmp_path):
    """`hf-transformer test --ckpt_path CKPT` rebuilds the data module from the checkpoint's run record and hands it
    the checkpoint's copy of the tokenizer as `tokenizer_path`: the fixed vocabulary is accepted, another refused."""
    from lightning_modules.data.fixed_vocabulary import word_level_tokenizer

    datamodule = ShapesPixelDataModule(num_train=4, num_validation=2, num_test=2, image_size=8,
                                       cache_dir=str(tmp_path / "cache"))
    record = datamodule.run_config()
    assert record["class_path"] == "lightning_modules.data.ShapesPixelDataModule"
    datamodule.tokenizer.save_pretrained(tmp_path / "from-checkpoint")
    rebuilt = ShapesPixelDataModule(**{**record["init_args"], "tokenizer_path": str(tmp_path / "from-checkpoint")})
    assert rebuilt.tokenizer.get_vocab() == datamodule.tokenizer.get_vocab() and rebuilt.image_size == 8
    word_level_tokenizer(["a", "b"], model_max_length=16).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="is not the fixed vocabulary of ShapesPixelDataModule"):
        ShapesPixelDataModule(**{**record["init_args"], "tokenizer_path": str(tmp_path / "other")})
