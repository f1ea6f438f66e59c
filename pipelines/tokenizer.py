"""The real CLIP BPE tokenizer, built offline from the vocabulary file inside open_clip's wheel.

open_clip ships ``bpe_simple_vocab_16e6.txt.gz``: the same 48,894 BPE merges that OpenAI's CLIP
and Stable Diffusion's tokenizer use. From it we write the ``vocab.json`` (49,408 entries) and
``merges.txt`` that ``transformers.CLIPTokenizer`` reads, so a tokenizer identical to SD's is
available with no model hub.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

#: CLIP's context length; pipelines fail with OverflowError without it.
MODEL_MAX_LENGTH = 77
#: Merges used by CLIP: the file's lines 1 .. 49152-256-2 (see open_clip.tokenizer.SimpleTokenizer).
_NUM_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode table (as in CLIP and open_clip)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def open_clip_bpe_path() -> Path:
    """Path of the BPE vocabulary file bundled in open_clip's wheel."""
    import open_clip

    path = Path(os.path.dirname(open_clip.__file__)) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"open_clip's BPE vocabulary is missing: {path}")
    return path


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : _NUM_MERGES + 1]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_tokenizer_files(directory: str | os.PathLike) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs for CLIP's tokenizer into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return directory


def build_clip_tokenizer(directory: str | os.PathLike | None = None) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` identical to Stable Diffusion's, built offline.

    ``directory`` keeps the written files (e.g. a pipeline's ``tokenizer/`` folder); by default
    they go to a temporary folder.
    """
    if directory is None:
        import tempfile

        directory = tempfile.mkdtemp(prefix="clip-tokenizer-")
    path = write_clip_tokenizer_files(directory)
    return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
