"""Memory and time of the attention variants on CPU: prints two tables and writes JSON.

(a) The relative term S_rel of one decoder self-attention layer (D=512, H=8, Dh=64, batch 1): the skewed
    computation (Music Transformer) against the naive gather of an L x L x Dh tensor (Shaw et al.), peak bytes of
    the tensors allocated during the call, at L = 256 ... 2048.
(b) One causal self-attention layer (D=512, H=8), local blocks (l_q = l_m = 256) against full attention, time and
    peak bytes, at L = 1k, 4k, 16k. Both use the eager kernel, which materialises the logits it computes.

Peak bytes are measured by intercepting every tensor created during the call (a TorchDispatchMode) and tracking
the live total until each storage is freed. Sizes too large for this machine are reported analytically (marked
"analytic"): the naive gather is 4 H L^2 Dh bytes; full attention holds the H L^2 logits and weights.

    python -m benchmarks.attention_variants            # the full tables (a few minutes on 2 cores)
    python -m benchmarks.attention_variants --quick    # small sizes, seconds
"""

import argparse
import json
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hf_transformer import VaswaniConfig
from hf_transformer.attention_vaswani import VaswaniAttention, VaswaniRelativePositionEmbedding

RESULTS = Path(__file__).parent / "results" / "attention_variants.json"
D_MODEL, HEADS = 512, 8
HEAD_DIM = D_MODEL // HEADS


class PeakMemory(TorchDispatchMode):
    """Peak of the live bytes of the storages created while the mode is active."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.seen and storage.nbytes() > 0:
                    self.seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self.forget, key, storage.nbytes())
        return out

    def forget(self, key: int, size: int) -> None:
        self.seen.discard(key)
        self.live -= size


def measure(fn, repeats: int) -> tuple[float, int]:
    """Best wall time over `repeats` calls (seconds) and the peak bytes of one call."""
    with torch.no_grad():
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        with PeakMemory() as memory:
            fn()
    return min(times), memory.peak


def naive_relative(query: torch.Tensor, table: torch.Tensor, length: int, max_distance: int) -> torch.Tensor:
    """Shaw et al.: gather e_clip(j - i) for every (i, j): an (H, L, L, Dh) tensor."""
    positions = torch.arange(length)
    index = (positions[None, :] - positions[:, None]).clamp(-max_distance, max_distance) + max_distance
    return torch.einsum("bhid,hijd->bhij", query, table[:, index])


def relative_rows(lengths: list[int], naive_limit: int, repeats: int) -> list[dict]:
    rows = []
    for length in lengths:
        config = VaswaniConfig(vocab_size=10, max_relative_position=length, max_position_embeddings=length)
        module = VaswaniRelativePositionEmbedding(config, HEADS, HEAD_DIM)
        torch.nn.init.normal_(module.weight)
        query = torch.randn(1, HEADS, length, HEAD_DIM)
        # embedding_bytes: the gathered relative embeddings alone, (H, L, Dh) for the skew (causal distances
        # -(L-1)..0), (H, L, L, Dh) for the naive gather; peak_bytes also holds the (H, L, L) logits.
        seconds, peak = measure(lambda: module(query, 0, length, True), repeats)
        rows.append(dict(method="skewed", length=length, peak_bytes=peak, seconds=seconds, analytic=False,
                         embedding_bytes=4 * HEADS * length * HEAD_DIM))
        naive_embedding = 4 * HEADS * length**2 * HEAD_DIM
        if length <= naive_limit:
            seconds, peak = measure(lambda: naive_relative(query, module.weight, length, length), repeats)
            rows.append(dict(method="naive", length=length, peak_bytes=peak, seconds=seconds, analytic=False,
                             embedding_bytes=naive_embedding))
        else:  # the gathered (H, L, L, Dh) float32 tensor plus the (H, L, L) result
            rows.append(dict(method="naive", length=length, peak_bytes=naive_embedding + 4 * HEADS * length**2,
                             seconds=None, analytic=True, embedding_bytes=naive_embedding))
    return rows


def layer(attention_type: str, block: int) -> VaswaniAttention:
    config = VaswaniConfig(vocab_size=10, attention_type=attention_type, local_block_length=block,
                           local_memory_length=block, max_position_embeddings=1 << 20,
                           attn_implementation="eager")
    return VaswaniAttention(config, HEADS, layer_idx=0, is_causal=True).eval()


def local_rows(lengths: list[int], full_limit: int, block: int, repeats: int) -> list[dict]:
    rows = []
    layers = {kind: layer(kind, block) for kind in ("local", "full")}
    for length in lengths:
        hidden = torch.randn(1, length, D_MODEL)
        for kind, module in layers.items():
            if kind == "full" and length > full_limit:  # logits + weights, (H, L, L) float32 each
                rows.append(dict(method=kind, length=length, peak_bytes=2 * 4 * HEADS * length**2, seconds=None,
                                 analytic=True))
                continue
            seconds, peak = measure(lambda: module(hidden, None), repeats)  # no mask: causal (is_causal)
            rows.append(dict(method=kind, length=length, peak_bytes=peak, seconds=seconds, analytic=False))
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    embedding = "embedding_bytes" in rows[0]
    print(f"{'method':>8} {'L':>6} {'peak MiB':>12}" + (f" {'E_r MiB':>12}" if embedding else "")
          + f" {'seconds':>9}  note")
    for row in rows:
        seconds = "-" if row["seconds"] is None else f"{row['seconds']:.4f}"
        note = "analytic" if row["analytic"] else ""
        extra = f" {row['embedding_bytes'] / 2**20:>12.2f}" if embedding else ""
        print(f"{row['method']:>8} {row['length']:>6} {row['peak_bytes'] / 2**20:>12.2f}{extra} {seconds:>9}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (a smoke run)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.quick:
        relative = relative_rows([64, 128], naive_limit=128, repeats=1)
        local = local_rows([256, 512], full_limit=512, block=64, repeats=1)
    else:
        relative = relative_rows([256, 512, 1024, 2048], naive_limit=1024, repeats=3)
        local = local_rows([1024, 4096, 16384], full_limit=4096, block=256, repeats=2)
    print_table(f"(a) relative logits of one layer, D={D_MODEL}, H={HEADS}, batch 1", relative)
    print_table(f"(b) one causal self-attention layer, D={D_MODEL}, H={HEADS}, batch 1, local l_q = l_m", local)
    result = dict(
        device="cpu",
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        quick=args.quick,
        d_model=D_MODEL,
        heads=HEADS,
        relative=relative,
        local=local,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
