"""coordinator: see its issue; nothing public yet."""

__all__: list[str] = []
