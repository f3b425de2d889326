"""Replaying a recorded run offline (`kcctl replay RUN`).

`recording` reads what a run left (its responses, config, seed), `config` turns its
config into one whose only route is the simulator's recorded script, `service` starts
the replay as a new run through the run manager, and `results` + `compare` set the
replay's tool results beside the recorded ones (`replay.json`).
"""
