"""dmnt_lib: Neural Textured Deformable Meshes (DMNT, WACV 2024), a runnable reproduction.

Modules (import what you need; nothing heavy happens at import time):

* ``dmnt_lib.mesh``      UV meshes, category templates, OFF files
* ``dmnt_lib.camera``    PASCAL3D+ poses <-> cameras, rotation error, pose metrics
* ``dmnt_lib.render``    rasterization -> UV fragment, texture sampling, masks
* ``dmnt_lib.transform`` the differentiable image->UV transform (appendix A.1)
* ``dmnt_lib.data``      procedural CAD models, synthetic PASCAL3D+-style data, real-data loader
* ``dmnt_lib.deform``    deformation MLP and template fitting
"""

__version__ = "0.1.0"
