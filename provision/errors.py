"""The one exception the provisioning commands raise for problems a user can fix."""


class ProvisionError(Exception):
    """A sentence for the user: what went wrong and what to do about it."""
