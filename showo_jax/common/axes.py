"""Logical axis names for parameters and activations, and the default rules mapping them to mesh axes.

Models annotate every parameter (`nn.with_logical_partitioning`) and every block-boundary activation
(`nn.with_logical_constraint`) with these names; the training config maps them to the mesh axes
('data', 'fsdp', 'tensor'), so the model code never names a mesh axis.
"""

# Parameters.
VOCAB = "vocab"
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
NORM = "norm"
LAYERS = "layers"  # the stacked-layer axis of scanned parameters
LORA = "lora"  # the rank axis of LoRA adapters (small: replicated)

# Activations.
BATCH = "activation_batch"
LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_HEADS = "activation_heads"
ACT_KV_HEADS = "activation_kv_heads"
ACT_MLP = "activation_mlp"
ACT_VOCAB = "activation_vocab"

# ('data', 'fsdp', 'tensor') mesh: batch over data+fsdp, weights fully sharded over fsdp, Megatron-style
# tensor parallelism over heads / mlp / vocab.
DEFAULT_RULES = (
    (BATCH, ("data", "fsdp")),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, "tensor"),
    (ACT_KV_HEADS, "tensor"),
    (ACT_MLP, "tensor"),
    (ACT_VOCAB, "tensor"),
    (VOCAB, "tensor"),
    (EMBED, "fsdp"),
    (HEADS, "tensor"),
    (KV_HEADS, "tensor"),
    (HEAD_DIM, None),
    (MLP, "tensor"),
    (NORM, None),
    (LAYERS, None),
    (LORA, None),
)
