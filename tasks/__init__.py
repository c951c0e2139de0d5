"""Task families: each module reads its files into examples and features, knows its metrics
and writes its prediction files. Modules never touch model internals (docs/tasks.md).

- `tasks.glue`: the GLUE benchmark (CoLA, SST-2, MRPC, STS-B, QQP, MNLI(-mm), QNLI, RTE, WNLI, AX).
"""
