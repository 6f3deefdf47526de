"""The learning rule and the pure computation of training: the paper's optimizer and
schedules, the train and eval steps, and the setup that builds a run's model, mesh,
sharded state and jitted steps from a config.
"""
