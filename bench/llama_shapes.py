"""One place that builds transformers' LlamaConfig for ropelens's reference scripts: the bench/
scripts and the fixture writers in tests/fixtures/ (which put this folder on sys.path). A
config only; the caller seeds torch and builds the model, so the random draws stay where they
were (the fixtures regenerate byte for byte)."""

from transformers import LlamaConfig


def llama_config(
    *,
    vocab,
    hidden,
    ffn,
    layers,
    heads,
    kv_heads=None,
    max_pos,
    eps=1e-6,
    tie=False,
    attn="eager",
    **extra,
):
    """A LlamaForCausalLM config. `kv_heads` defaults to `heads` (no GQA); `extra` passes
    any further LlamaConfig keyword (head_dim, initializer_range, rope_parameters, token ids)."""
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads if kv_heads is None else kv_heads,
        max_position_embeddings=max_pos,
        rms_norm_eps=eps,
        tie_word_embeddings=tie,
        attn_implementation=attn,
        **extra,
    )


def swiglu_width(hidden):
    """The MLP width ropelens's `LlamaConfig::new` gives: 8/3 x hidden rounded up to a
    multiple of 32."""
    return -(-(-(-8 * hidden // 3)) // 32) * 32
