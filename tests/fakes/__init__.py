"""Small honest stand-ins for the runner's ports: the task store, the git workspace, the agent and
the dispatcher. Each keeps the real one's rules, so a test on them says what the real one does."""
