"""The trivial function of the benchmarks: returns its event unchanged."""


def handler(event, context):
    return event
