"""l1forge.online: the streaming trigger daemon, storage, monitoring and continual learning."""
