"""The processes of a multi-process run: the launcher's environment, start-up, the watch
for lost peers and agreement on one config."""
