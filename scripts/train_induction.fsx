// A researcher's first script: train a 2-layer attention-only model on repeated random tokens,
// save it, load it back, and look at what the cache holds.
#load "Prelude.fsx"

open System
open TorchSharp
open MechInterp.Model
open MechInterp.Data
open MechInterp.Training

// Settings: change freely.
let steps = 2000
let checkpoint = "artifacts/checkpoints/induction-script.safetensors"

// Each sequence repeats a segment of 8..16 random tokens at a random offset (maxRepeat 16: 33 tokens).
let task = InductionTask(vocabSize = 64, maxRepeat = 16, minRepeat = 8)
let config =
    DecoderConfig(d_model = 64, n_layers = 2, n_heads = 4, attn_only = true, positional_embedding_type = "rotary",
                  d_vocab = task.VocabSize, n_ctx = task.SequenceLength, normalization_type = "LN", seed = 0)
let model = new HookedTransformer(config)

// Evaluated on the trainer's held-out batch: the loss on the repeat, which only induction can lower.
let repeatLoss (m: HookedTransformer) (batch: TokenBatch) =
    let logits = m.forward batch.Tokens
    readOnlyDict [ "repeat_loss", Losses.Masked(logits, batch.Tokens, InductionTask.RepeatMask batch) ]

let trainer =
    Trainer(model, task, TrainingConfig(Steps = steps, BatchSize = 32, LearningRate = 1e-3, EvalEvery = 100),
            Metrics = Func<_, _, _>(repeatLoss))
let result = trainer.Run()
for e in result.Evals do
    printfn "step %4d  eval loss %.3f  repeat loss %.3f" e.Step e.Loss e.Metrics.["repeat_loss"]
printfn "trained %d steps in %.1f s (%.0f tokens/s)" steps result.Seconds result.TokensPerSecond

model.Save checkpoint
let reloaded = HookedTransformer.Load checkpoint
let tokens = task.Sample(1, Random 123).Tokens
let same = (model.forward tokens - reloaded.forward tokens).abs().max().item<float32>()
printfn "saved %s; reloaded logits differ by at most %g" checkpoint same

let struct (logits, cache) = reloaded.RunWithCache tokens
printfn "cache keys (%d):" cache.Count
for key in cache.Keys do
    printfn "  %-32s %A" key cache.[key].shape
