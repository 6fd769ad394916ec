"""Who runs when: the sequences, the step plan and its fair queue, speculation, the model thread, its
chores and its outbox."""
