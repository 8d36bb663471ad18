"""Output functions: exact margins, padding-aware LM margins, and resolving them by name."""

from types import SimpleNamespace

import pytest
import torch

from coar.outputs import OUTPUT_FUNCTIONS, get_logits, lm_margin, margin, resolve_output_fn


def brute_force_margin(scores: list[float], correct: int) -> float:
    """logit[y] - max over the other classes, one class at a time."""
    return scores[correct] - max(s for j, s in enumerate(scores) if j != correct)


def brute_force_lm_margin(logits: torch.Tensor, tokens: list[int]) -> float:
    """Mean next-token margin of one unpadded sequence."""
    margins = [brute_force_margin(logits[t].tolist(), tokens[t + 1]) for t in range(len(tokens) - 1)]
    return sum(margins) / len(margins)


def test_margin_equals_brute_force_including_ties():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(-2, 3, (200, 5), generator=generator).float()  # few values: many ties
    labels = torch.randint(0, 5, (200,), generator=generator)
    expected = [brute_force_margin(row.tolist(), int(y)) for row, y in zip(logits, labels)]
    assert margin(logits, labels).tolist() == expected
    assert 0.0 in expected  # the correct class tied with the best other class occurs


def test_margin_is_zero_when_correct_class_ties_the_best_other():
    logits = torch.tensor([[3.0, 3.0, 1.0], [2.0, 5.0, 5.0]])
    assert margin(logits, torch.tensor([0, 2])).tolist() == [0.0, 0.0]


def test_margin_of_half_precision_logits_is_computed_in_float32():
    logits = torch.tensor([[2048.0, 0.0, 0.5]], dtype=torch.float16)
    result = margin(logits, torch.tensor([2]))
    assert result.dtype == torch.float32
    assert result.item() == -2047.5  # float16 subtraction would round this to -2048


def test_output_functions_read_logits_from_model_output_objects():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    assert torch.equal(get_logits(SimpleNamespace(logits=logits)), logits)
    assert torch.equal(margin(SimpleNamespace(logits=logits), labels), margin(logits, labels))


def test_get_logits_rejects_outputs_without_logits():
    with pytest.raises(TypeError, match="logits"):
        get_logits((torch.randn(2, 3),))


def test_margin_rejects_labels_that_do_not_match_logits():
    with pytest.raises(ValueError, match="margin expects"):
        margin(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))


def right_padded(sequences: list[list[int]]) -> torch.Tensor:
    """(B, T) labels: the sequences followed by -100."""
    width = max(map(len, sequences))
    return torch.tensor([s + [-100] * (width - len(s)) for s in sequences])


def test_lm_margin_equals_brute_force_over_real_tokens_only():
    generator = torch.Generator().manual_seed(1)
    sequences = [[3, 1, 4, 1, 5], [2, 7], [6, 0, 2, 8, 1, 8, 2, 8]]
    labels = right_padded(sequences)
    logits = torch.randint(-3, 4, (*labels.shape, 9), generator=generator).float()
    expected = [brute_force_lm_margin(logits[b], s) for b, s in enumerate(sequences)]
    assert torch.allclose(lm_margin(logits, labels), torch.tensor(expected))


def test_lm_margin_rejects_sequences_with_fewer_than_two_real_tokens():
    labels = right_padded([[1, 2, 3], [4]])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        lm_margin(torch.randn(2, 3, 5), labels)


def test_lm_margin_of_padded_batch_equals_unpadded_gpt2_runs():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=50, n_positions=32)
    model = GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(2)
    lengths = [12, 5, 9, 2]
    sequences = [torch.randint(0, 50, (n,), generator=generator).tolist() for n in lengths]
    labels = right_padded(sequences)
    input_ids = labels.clamp(min=0)  # any real token id at the padding positions
    with torch.no_grad():
        batched = lm_margin(model(input_ids, attention_mask=(labels != -100).long()), labels)
        separate = torch.cat([lm_margin(model(torch.tensor([s])), torch.tensor([s])) for s in sequences])
    assert torch.allclose(batched, separate, atol=1e-5)


def test_registry_names_resolve_to_their_functions():
    assert OUTPUT_FUNCTIONS == {"margin": margin, "lm_margin": lm_margin}
    assert resolve_output_fn("margin") is margin
    assert resolve_output_fn("lm_margin") is lm_margin


def test_module_function_specs_resolve():
    assert resolve_output_fn("coar.outputs:lm_margin") is lm_margin
    assert resolve_output_fn("torch:logsumexp") is torch.logsumexp


def test_unknown_output_name_error_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"'margins'.*\['lm_margin', 'margin'\]"):
        resolve_output_fn("margins")


def test_bad_module_function_specs_name_the_spec():
    with pytest.raises(ImportError, match="'coar.no_such_module:f'.*no such module"):
        resolve_output_fn("coar.no_such_module:f")
    with pytest.raises(ImportError, match="'coar.outputs:nope'.*has no attribute 'nope'"):
        resolve_output_fn("coar.outputs:nope")
    with pytest.raises(TypeError, match="'coar.outputs:IGNORE_INDEX'.*not callable"):
        resolve_output_fn("coar.outputs:IGNORE_INDEX")
