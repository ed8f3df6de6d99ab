"""The stages in pipeline order."""

from sylm_data.pipeline.stage import Stage
from sylm_data.stages import align, codebook, ingest, interleave, pairs, synthesize, tokenize

STAGES: dict[str, Stage] = {
    stage.name: stage for stage in (ingest.STAGE, align.STAGE, codebook.STAGE, tokenize.STAGE, interleave.STAGE, pairs.STAGE,
                                           synthesize.STAGE)
}
# what a run without --stage runs: the main line (the codebook is fitted in a run of its own)
MAIN_LINE = ["ingest", "align", "tokenize", "interleave"]


class PlanError(ValueError):
    pass


def plan(names: list[str]) -> list[Stage]:
    """The named stages in pipeline order; they must be consecutive (a run reads one stage's output)."""
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise PlanError(f"unknown stage {unknown[0]!r}; stages are: {', '.join(STAGES)}")
    chosen = [stage for stage in STAGES.values() if stage.name in names]
    for upstream, downstream in zip(chosen, chosen[1:]):
        if downstream.consumes != upstream.name:
            raise PlanError(
                f"{downstream.name} reads {downstream.consumes}'s output, not {upstream.name}'s: "
                f"add --stage {downstream.consumes} or run {downstream.name} on its own"
            )
    return chosen
