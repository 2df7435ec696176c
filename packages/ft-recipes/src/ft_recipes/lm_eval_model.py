"""An lm-evaluation-harness model backed by ft: ``lm_eval.simple_evaluate(model="ft", ...)``.

:class:`FtLM` implements lm-eval's three request types on an ft model (HF directory, GGUF file or
training output, optionally with a PEFT adapter applied or merged):

- ``loglikelihood``: contexts and continuations are split into tokens exactly as lm-eval's HF backend
  splits them (its ``TemplateLM``: trailing context spaces move to the continuation, the pair is
  encoded whole and cut at the context's length, an empty context becomes BOS/EOS), then scored by
  :func:`score_continuations` (each distinct context computed once into a KV cache, only
  continuation positions projected to the vocabulary);
- ``loglikelihood_rolling``: lm-eval's disjoint rolling windows over the text (:func:`rolling_windows`);
- ``generate_until``: batched greedy or sampled decoding with ft-models' ``generate`` (KV cache, left
  padding), stopped at EOS / end-of-turn ids, the request's ``until`` strings or ``max_gen_toks``, cut
  at the first stop string as lm-eval's backends cut.

Importing this module registers the model under the name ``ft`` (lm-eval must be installed:
``pip install 'ft-recipes[lm-eval]'``)::

    import lm_eval
    import ft_recipes.lm_eval_model  # registers "ft"

    lm_eval.simple_evaluate(model="ft", model_args="pretrained=out/base,adapter=out/adapter", tasks=[...])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's own models, so registering "ft" does not hide them)
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

import ft_models
from ft_recipes._lm_eval_scoring import rolling_windows, score_continuations

__all__ = ["FtLM", "rolling_windows", "score_continuations"]

_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float": "fp32"}
_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def _batch_size(value: int | str | None) -> int:
    """lm-eval passes ``batch_size`` as an int or a string (``"8"``, ``"auto"``); ft has no automatic
    search, so ``auto`` keeps the default of 16."""
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return 16
    size = int(value)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {value!r}")
    return size


@register_model("ft")
class FtLM(TemplateLM):
    """lm-eval's ``LM`` on an ft model.

    Args:
        pretrained: A model path (HF directory, ``.gguf`` file, training output, ``asset://...``) or an
            already loaded ft ``CausalLM`` (then ``tokenizer`` must be a tokenizer object).
        tokenizer: Tokenizer path (default: ``pretrained``) or an ft-data tokenizer.
        adapter: A PEFT adapter directory applied on top of the model.
        merge_adapter: Merge the adapter into the weights (faster; same function up to rounding).
        batch_size: Rows per forward (``auto`` means 16).
        max_length: Context length; default the model's ``max_position_embeddings``, as lm-eval's HF
            backend uses.
        max_gen_toks: Default for generation requests that name no ``max_gen_toks``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (used when loading from a path).
        dtype: ``auto``, ``fp32``/``float32``, ``bf16``/``bfloat16``, ``fp16``/``float16``.
        attention: ft's attention kernel choice (``ft_recipes.training.apply_attention``).
        add_bos_token: Force BOS on (True) or off (False); default: what the tokenizer does.
        prefix_token_id: Token that stands for an empty context (default BOS, else EOS).
        seed: Seed of the generator used by sampled generation requests.
        max_batch_size: Accepted for lm-eval's interface; unused (no automatic batch size).
    """

    def __init__(
        self,
        pretrained: str | ft_models.CausalLM,
        tokenizer: Any = None,
        adapter: str | None = None,
        merge_adapter: bool = False,
        batch_size: int | str | None = 16,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        device: str | None = "auto",
        dtype: str = "auto",
        attention: str = "auto",
        add_bos_token: bool | None = None,
        prefix_token_id: int | None = None,
        seed: int = 1234,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(pretrained, str):
            self._model, self.tokenizer, self._name = self._load(
                pretrained, tokenizer, adapter, device or "auto", dtype, attention
            )
        else:
            if tokenizer is None or isinstance(tokenizer, str):
                raise ValueError("FtLM: a loaded model needs its tokenizer object (tokenizer=...)")
            if adapter is not None:
                import ft_peft

                ft_peft.load_adapter(pretrained, adapter)
            self._model, self.tokenizer, self._name = pretrained, tokenizer, type(pretrained).__name__
        if merge_adapter:
            import ft_peft

            ft_peft.merge_adapters(self._model)
        self._model.eval()
        self._device = self._model.model.embed_tokens.weight.device
        self.batch_size = _batch_size(batch_size)
        self._max_length = int(max_length) if max_length else None
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id
        self._special_ids = set(self.tokenizer.special_tokens.values())
        from ft_recipes._setup import stop_token_ids

        self._stop_ids = sorted(stop_token_ids(self.tokenizer))
        self._generator = torch.Generator(device=self._device)
        self._generator.manual_seed(int(seed))

    @staticmethod
    def _load(
        path: str, tokenizer: Any, adapter: str | None, device_name: str, dtype: str, attention: str
    ) -> tuple[ft_models.CausalLM, Any, str]:
        from ft_recipes._setup import load_model_and_tokenizer, pick_device
        from ft_recipes.training import apply_attention, resolve_inference_precision

        device = pick_device(device_name)
        precision = resolve_inference_precision(_DTYPES.get(dtype, dtype), device)
        model, tok = load_model_and_tokenizer(
            {"_component_": "from_pretrained", "path": path},
            {"_component_": "load_tokenizer", "path": tokenizer if isinstance(tokenizer, str) else path},
            adapter,
            device,
            precision.dtype,
        )
        if tokenizer is not None and not isinstance(tokenizer, str):
            tok = tokenizer
        apply_attention(model, attention, device=device, dtype=precision.dtype, training=False)
        return model, tok, path

    # -- lm-eval's model properties -------------------------------------------------------------------

    @property
    def model(self) -> ft_models.CausalLM:
        """The ft model being evaluated."""
        return self._model

    @property
    def eot_token_id(self) -> int:
        """End of text: the tokenizer's EOS (lm-eval's HF backend uses ``eos_token_id``)."""
        return int(self.tokenizer.eos_id)

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context becomes: the given one, else BOS, else EOS (as HF's backend)."""
        if self.custom_prefix_token_id is not None:
            return int(self.custom_prefix_token_id)
        bos = self.tokenizer.bos_id
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        """Longest input: the given ``max_length``, else the model config's ``max_position_embeddings``."""
        return self._max_length or int(self._model.config.max_position_embeddings)

    @property
    def max_gen_toks(self) -> int:
        """Default number of tokens a generation request may produce."""
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        """Fingerprint for lm-eval's request cache."""
        return str(self._name).replace("/", "__")

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records about the model in the results' ``config``."""
        return {
            "model_num_parameters": sum(p.numel() for p in self._model.parameters()),
            "model_dtype": str(self._model.model.embed_tokens.weight.dtype),
        }

    # -- tokenization ---------------------------------------------------------------------------------

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids as lm-eval's HF backend encodes them.

        Special-token text (a chat template's markers) is matched as the special token, as a Hugging
        Face tokenizer does. BOS follows ``add_special_tokens`` (None: the tokenizer's own default or
        ``add_bos_token``), and is never added to a string that already starts with it.
        """
        tok = self.tokenizer
        wanted = add_special_tokens if add_special_tokens is not None else True
        default = bool(getattr(tok, "add_bos_default", False))
        add_bos = wanted and (self.add_bos_token if self.add_bos_token is not None else default)
        if add_special_tokens is None and string.startswith(tok.decode([self.prefix_token_id])):
            add_bos = False
        ids = list(tok.encode(string, add_bos=bool(add_bos and tok.bos_id is not None), allow_special=True))
        left = kwargs.get("left_truncate_len")
        return ids[-left:] if left else ids

    def tok_decode(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens`` without special tokens (HF's ``skip_special_tokens=True``)."""
        return str(self.tokenizer.decode([int(t) for t in tokens if int(t) not in self._special_ids]))

    # -- requests ----------------------------------------------------------------------------------------

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], **kwargs: Any
    ) -> list[tuple[float, bool]]:
        pairs = [(context, continuation) for _, context, continuation in requests]
        results = score_continuations(
            self._model, pairs, batch_size=self.batch_size, max_length=self.max_length
        )
        for (request, _, _), answer in zip(requests, results, strict=True):
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, answer)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text, scored over lm-eval's disjoint rolling windows."""
        pairs: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for n, (string,) in enumerate(req.args for req in requests):
            windows = rolling_windows(self.tok_encode(string), self.prefix_token_id, self.max_length)
            pairs.extend(windows)
            owner.extend([n] * len(windows))
        totals = [0.0] * len(requests)
        scores = score_continuations(
            self._model, pairs, batch_size=self.batch_size, max_length=self.max_length
        )
        for n, (logp, _) in zip(owner, scores, strict=True):
            totals[n] += logp
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Continue each context until a stop string, EOS / end of turn, or ``max_gen_toks``.

        Requests with the same generation settings run together, longest context first, in batches of
        ``batch_size``; the returned text ends before the first stop string.
        """
        groups: dict[str, list[int]] = {}
        for n, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(n)
        out = [""] * len(requests)
        eos_text = self.tokenizer.decode([self.eot_token_id])
        for indices in groups.values():
            kwargs = dict(normalize_gen_kwargs(dict(requests[indices[0]].args[1]), self.max_gen_toks))
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_new = int(kwargs.pop("max_gen_toks"))
            if max_new >= self.max_length:
                raise ValueError(
                    f"max_gen_toks {max_new} must be below the model's max_length {self.max_length}"
                )
            sampling = self._sampling(kwargs)
            prompts = {
                n: self.tok_encode(requests[n].args[0])[-(self.max_length - max_new) :] for n in indices
            }
            order = sorted(indices, key=lambda n: -len(prompts[n]))
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                new_ids, lengths = ft_models.generate(
                    self._model,
                    [prompts[n] for n in batch],
                    max_new,
                    eos_token_id=self._stop_ids or None,
                    stop_strings=[s for s in until if s] or None,
                    decode=self.tok_decode,
                    sampling=sampling,
                    generator=self._generator,
                )
                for n, row, length in zip(batch, new_ids.tolist(), lengths.tolist(), strict=True):
                    text = postprocess_generated_text(self.tok_decode(row[:length]), until, None)
                    out[n] = text
                    self.cache_hook.add_partial("generate_until", requests[n].args, text)
        return out

    @staticmethod
    def _sampling(kwargs: dict[str, Any]) -> ft_models.SamplingConfig | None:
        """ft's sampling settings from lm-eval's normalised generation kwargs (None: greedy)."""
        if not kwargs.get("do_sample"):
            return None
        given = {k: kwargs[k] for k in _SAMPLING_KEYS if kwargs.get(k) is not None}
        return ft_models.SamplingConfig(do_sample=True, **given)

    # -- chat templates ----------------------------------------------------------------------------------

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The tokenizer's chat template when lm-eval applies one (``apply_chat_template``)."""
        if chat_template is False or chat_template is None:
            return None
        return self.tokenizer.chat_template

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text of ``chat_history`` in the model's chat template.

        Without ``add_generation_prompt`` the last (assistant) message is continued, not closed, as
        transformers' ``continue_final_message`` does.
        """
        import ft_data

        text = str(
            ft_data.apply_chat_template(
                chat_history, tokenizer=self.tokenizer, add_generation_prompt=add_generation_prompt
            )
        )
        if not add_generation_prompt and chat_history:
            last = chat_history[-1]["content"].strip()
            cut = text.rfind(last)
            if cut >= 0:
                text = text[: cut + len(last)]
        return text
