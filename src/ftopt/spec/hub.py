"""Models from the Hugging Face Hub, through `huggingface_hub` and its cache.

`org/name[@revision]`: `estimate`/`plan`/`bench` read config.json only; `train` downloads the safetensors weights
and the tokenizer (nothing else: no pickled `.bin`, no remote code unless asked). The library's own settings
apply: HF_TOKEN for gated repos, HF_HUB_OFFLINE=1 for the cache only, HF_ENDPOINT for a mirror. Where the Hub's
host has no address (no network) the cache alone answers, at once (`_cache_only`). Every failure is one sentence
(FtoptError).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ftopt.spec.errors import FtoptError, first_line

# org/name with the Hub's allowed characters, optionally @revision (branch, tag or commit)
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")
# what `train` downloads: weights (safetensors only), config, tokenizer and chat template files
WEIGHT_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.*",
    "merges.txt",
    "*.model",
    "*.jinja",
    "chat_template.json",
]
# what marks an argument as a path on disk, never a Hub id: a leading ./ ../ / or ~, or a model file's suffix
_LOCAL_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")
_FILE_SUFFIXES = {".json", ".safetensors", ".bin", ".pt", ".pth"}
_CAUSAL_SUFFIX = "ForCausalLM"  # decoder-only language models; e.g. BertForMaskedLM or T5ForConditionalGeneration


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def is_local_path(ref: str) -> bool:
    """`ref` is meant as a path on disk: it starts with ./, ../, / or ~ (or is . or ..), or ends in a model file's
    suffix. `org/name` without these is ambiguous; it is a Hub id unless a local path of that name exists."""
    return ref in (".", "..") or ref.startswith(_LOCAL_PREFIXES) or Path(ref).suffix in _FILE_SUFFIXES


def check_local_path(ref: str) -> None:
    """A path-like argument (is_local_path) that does not exist is one line, not a Hub lookup."""
    if is_local_path(ref) and not Path(ref).expanduser().exists():
        raise FtoptError(
            f"No such folder or file: {ref} (a path starting with ./, ../, / or ~ is read from disk, "
            "never looked up on the Hub)."
        )


def parse_hub_id(ref: str, local: bool = True) -> HubRef | None:
    """A HubRef when `ref` looks like `org/name[@revision]`, is not path-like (is_local_path) and, with `local`
    (the file system may be read), is not an existing local path; else None."""
    m = _HUB_ID.match(ref)
    if m is None or is_local_path(ref) or (local and Path(ref).expanduser().exists()):
        return None
    return HubRef(m["repo"], m["rev"])


@contextlib.contextmanager
def _hub_errors(ref: HubRef, what: str, not_found_hint: str = ""):
    """huggingface_hub's exceptions as one sentence each; `not_found_hint` ends the repo-not-found one."""
    from huggingface_hub import errors as E

    try:
        yield
    except E.GatedRepoError:
        raise FtoptError(
            f"{ref.repo_id} is gated: accept its terms on the Hub and set HF_TOKEN to a token with access."
        ) from None
    except E.RevisionNotFoundError:
        raise FtoptError(f"{ref.repo_id} has no revision '{ref.revision}'.") from None
    except E.RepositoryNotFoundError:
        raise FtoptError(
            f"No model {ref.repo_id} on the Hub (or it is private: set HF_TOKEN) and no local folder "
            f"./{ref.repo_id}{not_found_hint}."
        ) from None
    except E.RemoteEntryNotFoundError:
        raise FtoptError(f"{ref} has no {what} on the Hub.") from None
    except (E.LocalEntryNotFoundError, E.OfflineModeIsEnabled):
        raise FtoptError(
            f"{ref} is not in the Hugging Face cache and the Hub cannot be reached (HF_HUB_OFFLINE=1 "
            "or no network); download it once with network access."
        ) from None
    except E.HfHubHTTPError as e:
        raise FtoptError(f"The Hub refused {ref} ({first_line(e, 120)}).") from None


def _cache_only() -> bool:
    """Whether to read the Hugging Face cache alone: the Hub's host has no address here (no network, or no name
    service) and no proxy would look it up. huggingface_hub's first request would fail at once and fall back to the
    cache; for a file the cache lacks it then retries the request 5 times, sleeping 1 + 2 + 4 + 8 + 8 = 23 s in all
    (huggingface_hub 2.4, file_download.py `_hf_hub_download_to_cache_dir`, utils/_http.py `_http_backoff_base`),
    and fails the same way. Offline mode (HF_HUB_OFFLINE) is the library's own: it needs no probe."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(kind != "no" for kind in urllib.request.getproxies()):
        return False  # the proxy resolves the Hub's name, which may have no address here
    url = urlsplit(constants.ENDPOINT)
    if not url.hostname:
        return False
    try:
        socket.getaddrinfo(url.hostname, url.port or (443 if url.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError):
        return True
    return False


def check_decoder(config: dict, ref: str) -> None:
    """Refuse what ftopt cannot fine-tune as a causal LM."""
    archs = config.get("architectures") or []
    if archs and not any(a.endswith(_CAUSAL_SUFFIX) for a in archs):
        raise FtoptError(f"{ref} is not a decoder-only language model (architectures: {', '.join(archs)}).")


def check_remote_code(config: dict, ref: str, trust_remote_code: bool) -> None:
    """Building a model runs a repo's own Python code when its config maps classes to it (`auto_map`): only when
    asked (then that code builds it, weights or random init: modeling.build_base). Reading the config for an
    estimate or a plan runs nothing, so only `train` and `bench` check this."""
    if config.get("auto_map") and not trust_remote_code:
        raise FtoptError(
            f"{ref} needs its own Python code (its config's auto_map); rerun with --trust-remote-code if you trust it."
        )


def hub_config(ref: HubRef, not_found_hint: str = "") -> dict:
    """config.json of a Hub model (one file through the cache), checked by check_decoder."""
    return _read_config(ref, _cache_only(), not_found_hint)


def _read_config(ref: HubRef, cache_only: bool, not_found_hint: str = "") -> dict:
    """hub_config with the probe's answer (`_cache_only`) given: hub_snapshot's one probe serves both downloads."""
    from huggingface_hub import hf_hub_download

    with _hub_errors(ref, "config.json", not_found_hint):
        path = hf_hub_download(ref.repo_id, "config.json", revision=ref.revision, local_files_only=cache_only)
    try:
        config = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise FtoptError(f"The config.json of {ref} is not valid JSON (line {e.lineno}: {e.msg}).") from None
    check_decoder(config, str(ref))
    return config


def hub_snapshot(ref: HubRef, trust_remote_code: bool = False) -> Path:
    """A local folder (the cache's snapshot) with the config, safetensors weights and tokenizer of a Hub model."""
    from huggingface_hub import snapshot_download

    # one probe for both requests: where the name server does not answer, each probe waits out the resolver's
    # timeout (5 s per try, 2 tries by default: resolv.conf(5) `timeout`, `attempts`)
    cache_only = _cache_only()
    check_remote_code(_read_config(ref, cache_only), str(ref), trust_remote_code)
    patterns = WEIGHT_PATTERNS + (["*.py"] if trust_remote_code else [])
    with _hub_errors(ref, "weights"):
        folder = Path(
            snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=patterns, local_files_only=cache_only)
        )
    if not any(folder.glob("*.safetensors")):
        raise FtoptError(f"{ref} has no safetensors weights; ftopt does not load pickled .bin files.")
    return folder


def remote_code_folder(ref: str) -> str:
    """A local folder with the config and the Python files its auto_map names, for a random-init model built by
    that code: the model folder itself, a config.json's folder, or the Hub repo's config and *.py (cache)."""
    path = Path(ref).expanduser()
    if path.exists():
        return str(path if path.is_dir() else path.parent)
    from huggingface_hub import snapshot_download

    hub = parse_hub_id(ref)
    if hub is None:
        raise FtoptError(f"{ref} is neither a local model folder nor a Hub id, so its own code cannot be found.")
    with _hub_errors(hub, "code"):
        return snapshot_download(
            hub.repo_id,
            revision=hub.revision,
            allow_patterns=["config.json", "*.py"],
            local_files_only=_cache_only(),
        )


def resolve_weights(ref: str, trust_remote_code: bool = False) -> str:
    """A local folder with the model's weights: `ref` itself when it is a folder, else the Hub snapshot."""
    check_local_path(ref)
    hub = parse_hub_id(ref)
    if hub is None:
        folder = Path(ref).expanduser()
        if not folder.is_dir():
            raise FtoptError(f"--model {ref} is neither a local model folder nor a Hub id (org/name[@revision]).")
        if not any(folder.glob("*.safetensors")):  # else transformers fails on it after the data is tokenized
            raise FtoptError(
                f"--model {ref} has no safetensors weights (model.safetensors or model-*.safetensors); ftopt does "
                "not load pickled .bin files. For random weights of its config use --random-init."
            )
        return ref
    return str(hub_snapshot(hub, trust_remote_code))
