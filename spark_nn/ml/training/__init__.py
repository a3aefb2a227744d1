"""Distributed training, one responsibility a module, each importing only those listed above it:

- errors: task errors as the driver sees them (a lost resident block, a row-naming ValueError)
- blocks: the one pass that writes each partition's block (resident files or cached arrays)
- faults: test-only fault injection (a killed worker, deleted resident files)
- worker: what a task runs (sampling, a step, k local steps, validation) and the result it returns
- rounds: a round on a classic session (ship the payload, map the task, treeAggregate)
- local_steps: how many steps a round takes (a fixed k, or 'auto')
- summary, progress: what a fit did (model.summary), and its progress bar
- checkpoint: a fit's state on disk, to resume from
- trainer: the loop (rounds, epochs, validation, early stopping, checkpoints)
"""
