// The console's sections, by their hash route (#/devices ...).

import audit from './pages/audit.js';
import credentials from './pages/credentials.js';
import dashboard from './pages/dashboard.js';
import devices from './pages/devices.js';
import grants from './pages/grants.js';
import nodes from './pages/nodes.js';
import operators from './pages/operators.js';
import recording from './pages/recording.js';
import tokens from './pages/tokens.js';
import users from './pages/users.js';

export const pages = {dashboard, devices, users, grants, recording, nodes, credentials, tokens,
                      operators, audit};
