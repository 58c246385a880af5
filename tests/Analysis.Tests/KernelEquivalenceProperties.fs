/// Native and managed kernels agree on random inputs (the reference backend keeps the fast one honest).
module MechInterp.Analysis.Tests.KernelEquivalenceProperties

open Xunit
open FsCheck.Xunit
open TorchSharp
open MechInterp
open MechInterp.Kernels
open MechInterp.Analysis.Tests.Generators

[<Collection("torch")>]
type SoftmaxProperties(_fixture: TorchFixture) =

    [<Property(Arbitrary = [| typeof<Arbitraries> |], MaxTest = 60)>]
    member _.``native softmax equals managed softmax, forward and backward`` (spec: TensorSpec) =
        Assert.True(Native.NativeKernels.IsAvailable, Native.NativeKernels.UnavailableReason)
        use _scope = torch.NewDisposeScope()
        let gen = torch.Generator(uint64 spec.Seed)
        let x = torch.randn(spec.Shape, generator = gen).mul(torch.tensor spec.Scale)
        let w = torch.randn(spec.Shape, generator = gen)
        let xn = x.clone().requires_grad_()
        let xm = x.clone().requires_grad_()
        let yn = Kernel.SoftmaxLastDim(xn, KernelBackend.Native)
        let ym = Kernel.SoftmaxLastDim(xm, KernelBackend.Managed)
        yn.mul(w).sum().backward()
        ym.mul(w).sum().backward()
        yn.allclose(ym, rtol = 1e-5, atol = 1e-6)
        && xn.grad.allclose(xm.grad, rtol = 1e-4, atol = 1e-5)
        && not (yn.isnan().any().item<bool>())
