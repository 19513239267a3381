"""The validator side: the durable inbox, task specs, and the judgement of submissions."""
