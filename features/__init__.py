"""Feature platform: declarative feature views, pure Arrow transforms, Feast offline/online stores,
materialization, point-in-time training sets and the online read API."""
