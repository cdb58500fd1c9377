"""Everything that stores: the prediction log, labels, windows and the live pointer.

Open it with ``state.opener.open_state``; the interface is ``state.types.StateStore``
and the handle every process holds is ``state.shared.SharedState``. The map of the
modules is in docs/architecture.md#the-state-package.
"""
