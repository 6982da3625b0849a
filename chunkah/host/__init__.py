"""Host side: plan an update (pure), fetch what is missing, assemble, deploy into a sysroot.

The sysroot layout, deployments, the atomic switch, /etc merge, rollback, status,
locking and garbage collection are described in docs/sysroot.md.
"""
