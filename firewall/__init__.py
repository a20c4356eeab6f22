"""mcpfw: a policy-as-code security firewall for the Model Context Protocol."""

__version__ = "0.1.0"
