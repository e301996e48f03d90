"""The Lookout for Equipment side: the API client, inference results read back, provisioning, status.

client     the L4E API client and discovery of the scheduler's input and output locations
results    inference results (JSON Lines) read back and parsed
provision  `l4e-agent provision`: dataset, model and inference scheduler
status     `l4e-agent status CONFIG`: one screen about an asset, from the Lookout API and the state directory
"""
