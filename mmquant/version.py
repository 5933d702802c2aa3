"""The version of mmquant."""
__version__ = '0.1.0'


def parse_version_info(version_str: str) -> tuple:
    """Parse a version string into a tuple of ints and suffix strings.

    Args:
        version_str (str): A version like ``'0.1.0'`` or ``'0.2.0rc1'``.

    Returns:
        tuple: ``(0, 1, 0)`` or ``(0, 2, 0, 'rc1')``.
    """
    info = []
    for part in version_str.split('.'):
        if part.isdigit():
            info.append(int(part))
        else:
            digits = ''.join(c for c in part if c.isdigit())
            info.append(int(digits.split()[0]) if digits else 0)
            info.append(part[len(str(info[-1])):])
    return tuple(info)


version_info = parse_version_info(__version__)
