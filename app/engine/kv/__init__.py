"""The KV memory: the batch's rows, the slabs they live in, the prefix cache, and what of it may be taken back."""
