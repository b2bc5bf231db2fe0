'use strict'
// Loaded with `node -r` before each node-postgres integration test file. It
// records every test of the file's Suite (test/suite.js, unmodified) as one
// JSON line in $DRIVERS_NODE_RESULTS: the suite prints its results but exits
// the process on the first failure or timeout, so the outcome is taken from
// the callback the Suite hands each test, and a test still running when the
// process exits is recorded as failed with the reason.
const fs = require('fs')
const path = require('path')

const out = process.env.DRIVERS_NODE_RESULTS
const file = process.env.DRIVERS_NODE_FILE || process.argv[1]
const Suite = require(path.resolve('test/suite.js'))

let current = null
const seen = new Map()
const record = (name, outcome, message) => {
  const n = (seen.get(name) || 0) + 1
  seen.set(name, n)
  const id = n > 1 ? `${name} #${n}` : name
  fs.appendFileSync(out, JSON.stringify({ file, name: id, outcome, message: message || '' }) + '\n')
}

const run = Suite.prototype.run
Suite.prototype.run = function (test, cb) {
  if (!test.action) {
    record(test.name, 'skipped')
    return run.call(this, test, cb)
  }
  const inner = test.run.bind(test)
  test.run = (done) => {
    current = test.name
    inner((err) => {
      current = null
      record(test.name, err ? 'failed' : 'passed', err ? String((err && err.stack) || err) : '')
      done(err)
    })
  }
  return run.call(this, test, cb)
}

let lastError = ''
process.on('uncaughtException', (e) => {
  lastError = String((e && e.stack) || e)
})
process.on('exit', (code) => {
  if (current !== null) {
    const why = lastError || `the process exited (code ${code}) while this test ran: the Suite's 5 s timeout or an uncaught error`
    record(current, 'failed', why)
  }
})
