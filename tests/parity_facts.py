"""What a config.json would say about the tiny test checkpoints, which are loaded as bare state dicts.

The import guesses nothing the tensor shapes do not show, so tests pass these explicitly
(`interop.load_official_showo(state, **parity_facts.TINY_PHI)`).
"""

# Parity set A (../shared/parity): vocabulary of SPEC §2 (100 text tokens, <|endoftext|> = 99 is BOS and EOS,
# 64 codes) and the LLM numerics of its tiny_phi_config_A/config.json.
TINY_PHI = dict(llm_vocab_size=100, codebook_size=64, bos_id=99, eos_id=99, rope_theta=10000.0, norm_eps=1e-5,
                rotary_fraction=0.5)

# The same vocabulary on a random LLaMA-family backbone (tests/numpy_reference.random_llama_state), with the
# numerics of the `tiny-llama` preset.
TINY_LLAMA = dict(llm_vocab_size=100, codebook_size=64, bos_id=99, eos_id=99, rope_theta=500000.0, norm_eps=1e-6)
