"""The gateway: REST and WebSocket API over the exchange's Kafka topics."""
