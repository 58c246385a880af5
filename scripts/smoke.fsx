// The smallest check that the toolchain works from F# Interactive: libtorch loads, a matmul runs,
// and the native kernel agrees with its managed twin.
#load "Prelude.fsx"

open TorchSharp
open MechInterp
open MechInterp.Kernels

let a = torch.tensor([| 1.0f; 2.0f; 3.0f; 4.0f |]).reshape(2L, 2L)   // [2, 2]
let product = a.matmul(a)                                        // [2, 2]
printfn "matmul: %A" (product.data<float32>().ToArray())
printfn "libtorch from: %s" (defaultArg (Option.ofObj Runtime.TorchRuntime.LoadedFrom) "default")

let x = torch.randn(4L, 7L)
let native = Kernel.SoftmaxLastDim(x, if Native.NativeKernels.IsAvailable then KernelBackend.Native else KernelBackend.Managed)
let managed = Kernel.SoftmaxLastDim(x, KernelBackend.Managed)
printfn "native kernels: %b, softmax max |native - managed| = %g"
    Native.NativeKernels.IsAvailable ((native - managed).abs().max().item<float32>())
