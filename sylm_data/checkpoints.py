"""Loading transformers checkpoints so that the wrong weights stop the run.

transformers fills weights a checkpoint lacks with random values and only prints a report; a
renamed or foreign checkpoint then runs silently with noise. Every model the project loads goes
through `from_pretrained_strict`, which refuses missing and unexpected weights in one line (weights
of the wrong shape transformers refuses itself).
"""


class WeightsMismatch(ValueError):
    pass


def from_pretrained_strict(auto_class, model_id, heads_allowed: bool = False, **kwargs):
    """`auto_class.from_pretrained(model_id, **kwargs)`, refused when weights are missing or unexpected.

    `heads_allowed`: a base model loaded from a task checkpoint (e.g. HuBERT from a CTC model)
    may leave the task head's weights unused; weights under the model's own modules may not."""
    model, info = auto_class.from_pretrained(model_id, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    if heads_allowed:
        own = {name for name, _ in model.named_children()}
        unexpected = [name for name in unexpected if name.split(".")[0] in own]
    problems = [f"{label} {len(names)} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                for label, names in (("missing", missing), ("unexpected", unexpected))
                if names]
    if problems:
        raise WeightsMismatch(f"the weights in {model_id} do not fit {type(model).__name__}: {'; '.join(problems)} "
                              "(a renamed or different checkpoint would run with random weights)")
    return model
