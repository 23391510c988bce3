"""The sans-I/O flow-control core: no asyncio, no clock; every step takes `now`."""
