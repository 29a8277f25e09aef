"""`lodestore serve`: Roblox's Open Cloud HTTP API over an emulated world: being built for issue 16."""
