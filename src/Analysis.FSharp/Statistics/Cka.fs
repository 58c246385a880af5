/// Linear centered kernel alignment (Kornblith et al. 2019): how alike two representations of the same
/// inputs are, up to rotation and isotropic scaling, in [0, 1].
module MechInterp.Analysis.Statistics.Cka

open System
open TorchSharp

/// CKA(X, Y) = ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F) on column-centred X [n, d1] and Y [n, d2] (rows are the same inputs).
/// Computed in float64; a representation with no variance has no defined similarity (an error).
let linear (x: torch.Tensor) (y: torch.Tensor) =
    if x.dim() <> 2L || y.dim() <> 2L || x.shape.[0] <> y.shape.[0] then
        invalidArg (nameof y) $"CKA needs [n, d1] and [n, d2] with the same n, got [{String.Join(',', x.shape)}] and [{String.Join(',', y.shape)}]"
    use _scope = torch.NewDisposeScope()
    let centre (t: torch.Tensor) = let t = t.to_type(torch.float64) in t - t.mean([| 0L |], keepdim = true)
    let x, y = centre x, centre y
    let frob2 (t: torch.Tensor) = (t * t).sum().item<float>()
    let xx, yy = sqrt (frob2 (x.t().matmul(x))), sqrt (frob2 (y.t().matmul(y)))
    if xx = 0.0 || yy = 0.0 then invalidArg (nameof x) "CKA is undefined for a representation with no variance (all rows equal)"
    frob2 (y.t().matmul(x)) / (xx * yy)
