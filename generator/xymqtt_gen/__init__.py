"""protoc-gen-xymqtt: generates typed xymqtt clients, servers and mocks from annotated .proto services."""
import os


def version() -> str:
    """The product's version: the VERSION file installed beside this package, or the source tree's."""
    here = os.path.dirname(os.path.realpath(__file__))
    for path in (os.path.join(here, "VERSION"), os.path.join(here, "..", "..", "VERSION")):
        try:
            with open(path) as f:
                return f.readline().strip()
        except OSError:
            continue
    return "unknown"
