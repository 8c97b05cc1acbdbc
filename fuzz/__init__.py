"""Coverage-guided fuzzing of the path every Kafka value takes: bytes -> validate -> COPY line.

`python -m fuzz` runs it (see `fuzz.__main__`); `fuzz.harness` holds the invariants, which the
unit tests also use to replay every input the fuzzer ever broke them with.
"""
