"""Examples of the docs, run by the tests: processors (docs/processors.md) and configs."""
