"""The training core: one replica process per machine, torchft for the quorum.

Does not import the coordinator or the agent: any launcher (``potluck demo``, the agent,
torchrun) starts ``python -m potluck.trainer.replica SPEC.json``.
"""
