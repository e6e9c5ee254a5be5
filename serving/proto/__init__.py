"""The Open Inference Protocol messages (``inference.proto``) and their generated code.

The generated module registers the protocol's package ``inference`` in protobuf's default pool,
as stock clients' copies do, so it must not be imported into a process that imports
``tritonclient`` or ``kserve``: the inference tier never does, and tests run stock clients in
their own processes (docs/serving.md).
"""
