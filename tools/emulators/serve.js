#!/usr/bin/env node
// Starts the local Kinesis (kinesalite) and DynamoDB (dynalite) emulators in one process, each bound to
// 127.0.0.1 through its JavaScript API (kinesalite's command line ignores --host and binds every
// interface). Started by scripts/kinesis.py; by hand:
//
//   node tools/emulators/serve.js --kinesis-port 4567 --dynamodb-port 4568 [--kinesis-path DIR]
//       [--dynamodb-path DIR] [--host 127.0.0.1] [--state-ms 50] [--shard-limit 1000]
//
// A port of 0 picks a free one; leaving a port out skips that emulator. Without a path the data
// lives in memory. Prints one line `emulators ready {"kinesis": "http://…", "dynamodb": "http://…"}`
// on stdout once both listen; SIGINT/SIGTERM close them and exit 0.
'use strict'

const path = require('path')
const { parseArgs } = require('util')

const { values: argv } = parseArgs({
  options: {
    'kinesis-port': { type: 'string' },
    'dynamodb-port': { type: 'string' },
    'kinesis-path': { type: 'string' },
    'dynamodb-path': { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    'state-ms': { type: 'string', default: '50' },
    'shard-limit': { type: 'string', default: '1000' },
    help: { type: 'boolean', default: false },
  },
})

if (argv.help || (argv['kinesis-port'] == null && argv['dynamodb-port'] == null)) {
  console.error('usage: serve.js [--kinesis-port N] [--dynamodb-port N] [--kinesis-path DIR] ' +
    '[--dynamodb-path DIR] [--host 127.0.0.1] [--state-ms 50] [--shard-limit 1000]')
  process.exit(argv.help ? 0 : 2)
}

const host = argv.host
const stateMs = Number(argv['state-ms'])
const servers = []
const endpoints = {}

function listen (name, server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(Number(port), host, () => {
      server.removeListener('error', reject)
      const address = server.address()
      endpoints[name] = `http://${address.address}:${address.port}`
      servers.push(server)
      resolve()
    })
  })
}

async function main () {
  if (argv['kinesis-port'] != null) {
    const kinesalite = require('kinesalite')
    const server = kinesalite({
      createStreamMs: stateMs,
      deleteStreamMs: stateMs,
      updateStreamMs: stateMs,
      shardLimit: Number(argv['shard-limit']),
      path: argv['kinesis-path'] ? path.resolve(argv['kinesis-path']) : undefined,
    })
    await listen('kinesis', server, argv['kinesis-port'])
  }
  if (argv['dynamodb-port'] != null) {
    const dynalite = require('dynalite')
    const server = dynalite({
      createTableMs: stateMs,
      deleteTableMs: stateMs,
      updateTableMs: stateMs,
      path: argv['dynamodb-path'] ? path.resolve(argv['dynamodb-path']) : undefined,
    })
    await listen('dynamodb', server, argv['dynamodb-port'])
  }
  console.log('emulators ready ' + JSON.stringify(endpoints))
}

let stopping = false
function stop (signal) {
  if (stopping) return
  stopping = true
  // Both servers close their LevelDB store on close(); do not wait for idle keep-alive clients.
  const deadline = setTimeout(() => process.exit(0), 2000)
  deadline.unref()
  let open = servers.length
  if (open === 0) process.exit(0)
  for (const server of servers) {
    if (server.closeAllConnections) server.closeAllConnections()
    server.close(() => { if (--open === 0) process.exit(0) })
  }
}

process.on('SIGINT', stop)
process.on('SIGTERM', stop)

main().catch((err) => {
  console.error('emulators failed to start: ' + (err.stack || err))
  process.exit(1)
})
