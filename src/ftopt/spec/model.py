"""Model architecture spec: the numbers of a decoder-only transformer that decide memory and FLOPs.

A `ModelSpec` is one generic description of a decoder: embeddings, per-layer attention and MLP linears, norms and
biases. It is read from a Hugging Face `config.json` by ftopt.spec.hf_config. `param_count()` equals
`sum(p.numel())` of the real transformers model (tested for every family).
"""

from __future__ import annotations

from enum import Enum
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MlpKind(str, Enum):
    GATED = "gated"  # SwiGLU / GeGLU: gate, up, down (3 matrices h x i)
    PLAIN = "plain"  # GELU MLP: up, down (2 matrices h x i)


class NormKind(str, Enum):
    RMS = "rms"  # weight only (h)
    LAYER = "layer"  # weight and bias (2h)


class SoftmaxDtype(str, Enum):
    """The dtype eager attention's softmax returns, which is what it saves for backward."""

    FP32 = "fp32"  # transformers' shared eager attention: softmax(dtype=float32), then .to(query dtype)
    SCORES = "scores"  # gpt2: softmax in the scores' dtype (the QK matmul's output)
    NORM_OUT = "norm_out"  # Falcon: softmax(dtype=hidden_states.dtype), the attention input's (its norm's output)


class Branch(str, Enum):
    """What a layer's residual dropout drops before the residual add."""

    ATTENTION = "attention"  # the attention output projection's output
    MLP = "mlp"  # the MLP's output
    BOTH = "both"  # both branches' sum (Falcon's parallel layer: dropout_add(mlp_output + attention_output))


class LayerLayout(BaseModel):
    """How a family's decoder layer computes, where that changes the tensors backward keeps beyond what its
    linears' shapes say (estimate/layer_saved.py, estimate/attention_saved.py read it). The defaults are the
    llama layout: separate q/k/v projections, rotary embeddings applied elementwise, transformers' shared
    attention functions, no dropout. Each family's reader in spec/families.py sets the rest, citing the
    transformers code; tests/estimate/test_saved_tensors.py checks each against a real forward's saved tensors."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    qkv_views: bool = Field(False, description="q, k, v are views of one fused projection's output")
    rotary: bool = Field(True, description="rotary embeddings rewrite q and k into new tensors (False: learned)")
    query_bhsd: bool = Field(False, description="rotary's torch.cat leaves q contiguous as (b, heads, s, d)")
    kv_repeated: bool = Field(False, description="the layer copies k and v to every query head itself")
    sdpa_always_masked: bool = Field(False, description="the model always hands SDPA a materialized mask")
    sdpa_kv_broadcast: bool = Field(False, description="SDPA gets fewer k/v heads than q heads, no enable_gqa")
    eager_softmax: SoftmaxDtype = SoftmaxDtype.FP32
    mlp_act_saved: int = Field(1, ge=1, description="intermediate-sized tensors a plain MLP's activation saves")
    mlp_act_saves_output: bool = Field(False, description="the plain MLP's activation saves its output (relu)")
    norm_scale_fp32: bool = Field(False, description="RMSNorm multiplies by (1 + weight) in fp32 (gemma)")
    post_norm: bool = Field(False, description="each norm reads a residual sum, after its branch (post-LN)")
    residual_dropouts: tuple[Branch, ...] = Field((), max_length=2, description="dropouts with p > 0 before the adds")
    attention_dropout: bool = Field(False, description="dropout with p > 0 on the attention probabilities")
    embedding_dropout: bool = Field(False, description="dropout with p > 0 on the embeddings")


class LinearGroup(str, Enum):
    """Where a linear sits in a layer; linears of one group read the same input tensor."""

    ATTN_IN = "attn_in"  # q, k, v (or fused qkv)
    ATTN_OUT = "attn_out"  # o
    MLP_IN = "mlp_in"  # gate, up (or fused gate_up, or fc1)
    MLP_OUT = "mlp_out"  # down (fc2)


class Linear(BaseModel):
    """One nn.Linear of a decoder layer, named as in the transformers module tree (LoRA targets use these)."""

    model_config = ConfigDict(frozen=True)
    name: str
    in_features: int
    out_features: int
    bias: bool
    group: LinearGroup

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    family: str
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    max_positions: int = Field(gt=0)
    mlp: MlpKind
    norm: NormKind
    norms_per_layer: int = Field(ge=1, le=4)
    final_norm: bool = True
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool
    learned_positions: int = Field(0, ge=0, description="rows of a learned position table (gpt2, opt); 0 for rotary")
    embed_dim: int | None = Field(None, description="OPT's word_embed_proj_dim when it differs from hidden_size")
    parallel_residual: bool = False
    layout: LayerLayout = Field(default_factory=LayerLayout)
    linear_names: dict[str, str] = Field(description="role (q,k,v,qkv,o,gate,up,gate_up,down,fc1,fc2) -> module name")
    hf_config: dict[str, Any] = Field(repr=False, description="the config.json this spec was read from")

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of the key/value heads ({self.num_kv_heads})"
            )
        return self

    # ---- shapes -------------------------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_linears(self) -> list[Linear]:
        """The linears of one decoder layer with their real shapes (fused projections stay fused)."""
        return list(self._layer_linears)

    @cached_property
    def _layer_linears(self) -> tuple[Linear, ...]:
        # built once per spec: the plan asks for them thousands of times (frozen model, so never stale)
        return tuple(self._build_layer_linears())

    def _build_layer_linears(self) -> list[Linear]:
        h, q, kv, i, n = self.hidden_size, self.q_dim, self.kv_dim, self.intermediate_size, self.linear_names
        out: list[Linear] = []
        if "qkv" in n:
            out.append(
                Linear(
                    name=n["qkv"], in_features=h, out_features=q + 2 * kv, bias=self.qkv_bias, group=LinearGroup.ATTN_IN
                )
            )
        else:
            for role, dim in (("q", q), ("k", kv), ("v", kv)):
                out.append(
                    Linear(name=n[role], in_features=h, out_features=dim, bias=self.qkv_bias, group=LinearGroup.ATTN_IN)
                )
        out.append(Linear(name=n["o"], in_features=q, out_features=h, bias=self.out_bias, group=LinearGroup.ATTN_OUT))
        if self.mlp is MlpKind.GATED:
            if "gate_up" in n:
                out.append(
                    Linear(
                        name=n["gate_up"],
                        in_features=h,
                        out_features=2 * i,
                        bias=self.mlp_bias,
                        group=LinearGroup.MLP_IN,
                    )
                )
            else:
                for role in ("gate", "up"):
                    out.append(
                        Linear(
                            name=n[role], in_features=h, out_features=i, bias=self.mlp_bias, group=LinearGroup.MLP_IN
                        )
                    )
            out.append(
                Linear(name=n["down"], in_features=i, out_features=h, bias=self.mlp_bias, group=LinearGroup.MLP_OUT)
            )
        else:
            out.append(
                Linear(name=n["fc1"], in_features=h, out_features=i, bias=self.mlp_bias, group=LinearGroup.MLP_IN)
            )
            out.append(
                Linear(name=n["fc2"], in_features=i, out_features=h, bias=self.mlp_bias, group=LinearGroup.MLP_OUT)
            )
        return out

    def attention_linear_names(self) -> list[str]:
        """Default LoRA targets: every attention projection of the family."""
        return [lin.name for lin in self.layer_linears() if lin.group in (LinearGroup.ATTN_IN, LinearGroup.ATTN_OUT)]

    def all_linear_names(self) -> list[str]:
        return [lin.name for lin in self.layer_linears()]

    # ---- parameter counts -------------------------------------------------------------------------------
    def _norm_params(self) -> int:
        return self.hidden_size * (2 if self.norm is NormKind.LAYER else 1)

    def layer_params(self) -> int:
        return sum(lin.params for lin in self.layer_linears()) + self.norms_per_layer * self._norm_params()

    def embedding_params(self) -> int:
        """Token table, learned positions and OPT's projections (input side)."""
        e = self.embed_dim or self.hidden_size
        n = self.vocab_size * e + self.learned_positions * self.hidden_size
        if self.embed_dim is not None:
            n += 2 * e * self.hidden_size  # project_in and project_out (no bias)
        return n

    def head_params(self) -> int:
        """Final norm plus an untied LM head."""
        e = self.embed_dim or self.hidden_size
        return (self._norm_params() if self.final_norm else 0) + (0 if self.tie_embeddings else self.vocab_size * e)

    def param_count(self) -> int:
        return self.embedding_params() + self.num_layers * self.layer_params() + self.head_params()

    def lora_params(self, r: int, targets: list[str]) -> int:
        """LoRA adapter parameters: A (r x in) and B (out x r) for each targeted linear, in every layer (PEFT)."""
        per_layer = sum(r * (lin.in_features + lin.out_features) for lin in self.layer_linears() if lin.name in targets)
        return self.num_layers * per_layer
