/// What an SAE is, in SAELens's words: its architecture, sizes and the hook it reads (cfg.json's fields).
namespace MechInterp.Analysis.Dictionary

open System

/// The four architectures, named as SAELens names them in cfg.json.
type Architecture =
    /// ReLU with an L1 penalty on each latent's activation times its decoder row's norm; decoder rows free
    /// (Anthropic's April 2024 update).
    | Standard
    /// Keeps each input's k largest pre-activations (Gao et al., 2024).
    | TopK
    /// Keeps the k × batch largest pre-activations of a batch; at inference a threshold (Bussmann et al., 2024).
    | BatchTopK
    /// A per-latent threshold θ trained through a straight-through estimator (Rajamanoharan et al., 2024).
    | JumpRelu

module Architecture =
    let all = [ Standard; TopK; BatchTopK; JumpRelu ]

    /// cfg.json's "architecture" value.
    let name =
        function
        | Standard -> "standard"
        | TopK -> "topk"
        | BatchTopK -> "batchtopk"
        | JumpRelu -> "jumprelu"

    let parse (s: string) =
        match all |> List.tryFind (fun a -> name a = s) with
        | Some a -> a
        | None -> invalidArg (nameof s) $"""unknown SAE architecture '{s}'; known: {String.Join(", ", all |> List.map name)}"""

    /// Architectures whose decoder rows are held at unit norm (the standard SAE's L1 term weighs them instead).
    let unitNormDecoder a = a <> Standard

    /// Architectures with a threshold tensor in their weights file.
    let hasThreshold a = a = JumpRelu || a = BatchTopK

/// The sizes and provenance of one SAE.
type SaeConfig =
    { Architecture: Architecture
      DIn: int
      DSae: int
      /// Latents kept per input (TopK) or on average per input (BatchTopK); unused otherwise.
      K: int
      /// The hook the SAE reads, e.g. "blocks.1.hook_resid_mid" (or "hidden" for a toy model's h = W x).
      HookName: string
      /// What the activations come from, e.g. "toy_language_moe" or "toy_model relu-20-5 1-S=0.03".
      ModelName: string }

module SaeConfig =
    /// A config with k = 0 (not TopK) and the given sizes.
    let create architecture dIn dSae k hookName modelName =
        { Architecture = architecture; DIn = dIn; DSae = dSae; K = k; HookName = hookName; ModelName = modelName }

    /// Every problem at once, each naming the value.
    let validate (c: SaeConfig) =
        let problems =
            [ if c.DIn < 1 then $"d_in ({c.DIn}) must be at least 1"
              if c.DSae < 1 then $"d_sae ({c.DSae}) must be at least 1"
              match c.Architecture with
              | TopK | BatchTopK ->
                  if c.K < 1 then $"k ({c.K}) must be at least 1 for {Architecture.name c.Architecture}"
                  if c.K > c.DSae then $"k ({c.K}) must not exceed d_sae ({c.DSae})"
              | _ -> ()
              if String.IsNullOrWhiteSpace c.HookName then "hook_name must not be empty" ]
        if not problems.IsEmpty then invalidArg (nameof c) ("invalid SAE config: " + String.Join("; ", problems))
