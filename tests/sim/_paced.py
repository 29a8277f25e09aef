"""A small paced scenario for tests of outside callers of a running simulation: an hour at 10x (six wall minutes),
which a test ends (`RunOptions.stop`) once its calls are done."""


def paced_scenario(name: str, seed: int, extra: str = "") -> str:
    return f"""
[world]
name = "{name}"
duration = 3600
time_scale = 10
seed = {seed}

[servers]
count = 2
max_players = 10

[players]
population = 10
join_rate = 0.5
{extra}
"""
