"""protoc-gen-xymqtt: generates typed xymqtt clients, servers and mocks from annotated .proto services."""
