"""A tiny, randomly initialised Hugging Face causal LM with its own byte-level BPE tokenizer and
chat template, built and saved locally (nothing downloaded): what the hf-causal-lm tests serve."""

from __future__ import annotations

from pathlib import Path

#: Enough text for a byte-level BPE to learn a few hundred merges, with multi-byte characters
#: (accents, CJK, emoji) so that streams must not split a character between chunks.
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a man is playing a guitar while someone plays an instrument",
    "tenstorrent devices run models token by token and stream the text",
    "café crème brûlée naïve résumé façade",
    "日本語のテキストと中文的文本",
    "emoji 🙂 🚀 ✨ and symbols € £ ¥",
    "hello world, this is a test of the speech server",
] * 20

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if not (loop.last and continue_final_message is defined and continue_final_message) %}"
    "{{ '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build(directory: Path, *, vocab_size: int = 400, layers: int = 2, hidden: int = 64,
          max_positions: int = 512, seed: int = 0) -> Path:
    """Save a tiny Llama-architecture model and its tokenizer into `directory`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=max_positions)
    fast.chat_template = CHAT_TEMPLATE
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, bos_token_id=None, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config)
    # Random weights give near-uniform next-token distributions, so a stream rarely meets EOS
    # by chance; scale the output layer up so that sampling is decisive and varied.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(directory)
    return directory
