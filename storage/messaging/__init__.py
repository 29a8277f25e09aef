"""The emulated MessagingService (cross-server messages): being built for issue 16."""
