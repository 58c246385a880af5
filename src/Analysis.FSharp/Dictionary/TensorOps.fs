/// Scalars for TorchSharp's overloaded arithmetic, which F# cannot pick from a bare float.
[<AutoOpen>]
module internal MechInterp.Analysis.Dictionary.TensorOps

/// A float as a TorchSharp Scalar.
let sc (v: float) : TorchSharp.Scalar = TorchSharp.Scalar.op_Implicit v
