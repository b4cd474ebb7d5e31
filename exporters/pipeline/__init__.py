"""The export pipeline: the single-size stages (``stages``), runs over several sizes (``multisize``) with one copy of
their weights (``shared_weights``), and the result row every stage records (``result``). The top of exporters: only
the CLI and the API import it."""
