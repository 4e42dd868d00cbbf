"""Secrets never written or logged: the one place that decides what is a secret and hides it.

A secret is the value of an argument or config key whose name ends in `token` (HubPushCallback's `token`, a
`--hub_token`), a token known to this process (HF_TOKEN, HUGGING_FACE_HUB_TOKEN, the `hf auth login` token, the
`token` of a callback), or anything shaped like a Hub token ("hf_" or "api_org_" and 30+ letters or digits).
Used for the command line in model cards, the run's saved config.yaml and the errors of failed Hub pushes.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Sequence
from typing import Any

import huggingface_hub
from jsonargparse import Namespace

HUB_TOKEN_PATTERN = re.compile(r"\b(?:hf_|api_org_)[A-Za-z0-9]{30,}\b")
HIDDEN = "***"


def is_secret_name(name: object) -> bool:
    """A key or argument name that holds a token (`token`, `hub_token`, `--trainer.callbacks.token`)."""
    return str(name).lstrip("-").lower().endswith("token")


def known_secrets(holders: Iterable[object] = ()) -> list[str]:
    """The tokens of this process (HF_TOKEN, HUGGING_FACE_HUB_TOKEN, the login token) and the `token` attributes of
    `holders` (e.g. a trainer's callbacks)."""
    secrets = [os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        secrets.append(huggingface_hub.get_token())
    except Exception:  # a broken token file must not break an export
        pass
    secrets.extend(getattr(holder, "token", None) for holder in holders)
    return [s for s in secrets if isinstance(s, str) and s]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret and anything shaped like a Hub token replaced by ***."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return HUB_TOKEN_PATTERN.sub(HIDDEN, text)


def redact_command(argv: Sequence[str], secrets: Iterable[str] = ()) -> str:
    """The shell-quoted command line, with the values of `*token` arguments and known secrets hidden."""
    words: list[str] = []
    hide_next = False
    for word in argv:
        if hide_next:
            words.append(HIDDEN)
            hide_next = False
            continue
        key, equals, _ = word.partition("=")
        if is_secret_name(key):
            if equals:
                word = f"{key}={HIDDEN}"
            elif word.startswith("-"):
                hide_next = True
        words.append(word)
    return redact(shlex.join(words), secrets)


def redact_config(value: Any) -> Any:
    """A copy of a parsed config (jsonargparse Namespace, dicts, lists) in which every string under a secret key is
    ***, and every other string is `redact`ed."""
    if isinstance(value, Namespace):
        return Namespace(**{key: HIDDEN if is_secret_name(key) and isinstance(item, str) else redact_config(item)
                            for key, item in vars(value).items()})
    if isinstance(value, dict):
        return {key: HIDDEN if is_secret_name(key) and isinstance(item, str) else redact_config(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [redact_config(item) for item in value]
    return redact(value) if isinstance(value, str) else value


__all__ = ["HIDDEN", "is_secret_name", "known_secrets", "redact", "redact_command", "redact_config"]
